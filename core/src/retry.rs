//! The retry log: re-sync orders for changes the secondary did not take in lockstep.
//!
//! A record never carries data, only *what* to re-sync: a row (table + primary key), a whole
//! table (when a change could not be pinned to keys, e.g. an UPDATE that moved primary keys
//! or more keys than the proxy tracks per transaction), or a statement (statement-mode
//! changes such as DDL, replayed once per idempotency key). Replaying a row record re-reads
//! the row from the source of truth, so records are idempotent and order-independent.
//!
//! The embedded backend keeps them in `_switchyard.retry_log` on the primary, written in the
//! client's own transaction; other backends (Kafka) carry the same JSON.

use serde::{Deserialize, Serialize};

/// Schema of the embedded backend, created by the proxy at start and by the reconciler.
pub const EMBEDDED_SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.retry_log (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('row', 'table', 'statement')),
    table_name text,
    key jsonb,
    statement text,
    origin jsonb NOT NULL,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error text,
    dead boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS retry_log_ready ON _switchyard.retry_log (next_attempt_at) WHERE NOT dead;
";

/// Schema on the secondary that makes statement-mode replay happen once per record.
pub const APPLIED_STATEMENTS_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.applied_statements (
    idempotency_key text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
";

/// Prefix of the two-phase transaction ids the proxy prepares on the secondary; the rest is
/// the primary's transaction id (`pg_current_xact_id()`), which recovery looks up with
/// `pg_xact_status()`.
pub use crate::direction::GID_PREFIX;

/// The gid for a primary transaction id.
pub fn gid_for(primary_xid: &str) -> String {
    format!("{GID_PREFIX}{primary_xid}")
}

/// The primary transaction id a gid names, if it is one of ours.
pub fn xid_of_gid(gid: &str) -> Option<&str> {
    let xid = gid.strip_prefix(GID_PREFIX)?;
    (!xid.is_empty() && xid.bytes().all(|b| b.is_ascii_digit())).then_some(xid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Row,
    Table,
    Statement,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Row => "row",
            RecordKind::Table => "table",
            RecordKind::Statement => "statement",
        }
    }
}

/// Where a record came from: enough to trace it back to one statement of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub instance: String,
    /// The primary's transaction id.
    pub xid: Option<String>,
    /// Position of the statement within its transaction.
    pub ordinal: u32,
}

/// One re-sync order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub idempotency_key: String,
    pub kind: RecordKind,
    /// Quoted, schema-qualified table name (`"public"."accounts"`).
    pub table_name: Option<String>,
    /// Primary key as a JSON object `{column: value}` in the row's JSON form.
    pub key: Option<serde_json::Value>,
    /// Statement text, for statement-mode records.
    pub statement: Option<String>,
    pub origin: Origin,
    pub reason: String,
}

impl RetryRecord {
    /// A stable idempotency key from the origin and what the record names.
    pub fn make_key(origin: &Origin, kind: RecordKind, table: &str, detail: &str) -> String {
        let h = xxhash_rust::xxh3::xxh3_128(
            format!(
                "{}\0{}\0{}\0{}\0{}\0{}",
                origin.instance,
                origin.xid.as_deref().unwrap_or(""),
                origin.ordinal,
                kind.as_str(),
                table,
                detail
            )
            .as_bytes(),
        );
        format!("{h:032x}")
    }
}

/// SQL that inserts `records` into the embedded log, as one statement with the records
/// inlined as a dollar-quoted JSON literal (so it can travel in a simple Query on a
/// connection whose settings the proxy does not control).
pub fn embedded_insert_sql(records: &[RetryRecord]) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(records)?;
    let mut tag = String::from("sy");
    while json.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    Ok(format!(
        "INSERT INTO _switchyard.retry_log \
         (idempotency_key, kind, table_name, key, statement, origin, reason) \
         SELECT r.idempotency_key, r.kind, r.table_name, r.key, r.statement, r.origin, r.reason \
         FROM jsonb_to_recordset(${tag}${json}${tag}$::jsonb) AS r(idempotency_key text, kind text, \
         table_name text, key jsonb, statement text, origin jsonb, reason text)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trip() {
        assert_eq!(xid_of_gid(&gid_for("12345")), Some("12345"));
        assert_eq!(xid_of_gid("other:1"), None);
        assert_eq!(xid_of_gid("switchyard:"), None);
        assert_eq!(xid_of_gid("switchyard:1;drop"), None);
    }

    #[test]
    fn insert_sql_survives_dollar_quotes_in_values() {
        let origin = Origin {
            instance: "p1".into(),
            xid: Some("7".into()),
            ordinal: 1,
        };
        let r = RetryRecord {
            idempotency_key: "k".into(),
            kind: RecordKind::Statement,
            table_name: None,
            key: None,
            statement: Some("SELECT $sy$ x $sy$".into()),
            origin,
            reason: "test".into(),
        };
        let sql = embedded_insert_sql(&[r]).expect("serializes");
        assert!(sql.contains("$syx$"), "{sql}");
    }

    #[test]
    fn idempotency_keys_differ_by_key() {
        let o = Origin {
            instance: "p".into(),
            xid: Some("1".into()),
            ordinal: 0,
        };
        let a = RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":1}");
        let b = RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":2}");
        assert_ne!(a, b);
        assert_eq!(
            a,
            RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":1}")
        );
    }
}
