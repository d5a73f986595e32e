//! The retry log: re-sync orders for changes the secondary did not take in lockstep.
//!
//! A record never carries data, only *what* to re-sync: a row (table + primary key), a whole
//! table (when a change could not be pinned to keys, e.g. an UPDATE that moved primary keys
//! or more keys than the proxy tracks per transaction), or a statement (statement-mode
//! changes such as DDL, replayed once per idempotency key). Replaying a row record re-reads
//! the row from the source of truth, so records are idempotent and order-independent.
//!
//! The embedded backend keeps them in `_switchyard.retry_log` on the primary, written in the
//! client's own transaction; other backends (Kafka) carry the same JSON. The primary is old
//! before the cutover's `writes-new` phase and new from then on: each record's origin says
//! which ([`Origin::direction`]), and so does the database whose table holds it.

use crate::catalog::count_if_exist;
use crate::direction::Direction;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

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
CREATE TABLE IF NOT EXISTS _switchyard.intents (
    xid xid8 PRIMARY KEY,
    via text NOT NULL,
    secondary_xid text NOT NULL,
    records json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
";

/// Schema on the secondary that makes statement-mode replay happen once per record.
pub const APPLIED_STATEMENTS_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.applied_statements (
    idempotency_key text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Lockstep mode: written by each secondary transaction (the primary's transaction id),
-- so recovery knows for sure whether it committed; deleted with its intent.
CREATE TABLE IF NOT EXISTS _switchyard.applied_intents (
    xid text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
";

/// Prefix of the two-phase transaction ids the proxy prepares on the secondary; the rest is
/// the primary's transaction id (`pg_current_xact_id()`), which recovery looks up with
/// `pg_xact_status()`.
pub use crate::direction::GID_PREFIX;

/// The gid for an old (forward primary) transaction id; [`Direction::gid`] for either.
pub fn gid_for(primary_xid: &str) -> String {
    Direction::OldToNew.gid(primary_xid)
}

/// The old transaction id a forward gid names, if it is one of ours (None for a reverse
/// gid: see [`Direction::of_gid`]).
pub fn xid_of_gid(gid: &str) -> Option<&str> {
    Direction::OldToNew.xid_of_gid(gid)
}

/// Records in the embedded log on `client`'s database still to replay (dead-lettered ones
/// left out: replay gave up on them); 0 where the table does not exist. For the cutover's
/// pre-flight, on the primary of the direction being left.
pub async fn backlog(client: &Client) -> Result<i64, tokio_postgres::Error> {
    count_where(client, "NOT dead").await
}

/// Dead-lettered records in the embedded log on `client`'s database (changes the secondary
/// never took: repair, then delete them); 0 where the table does not exist.
pub async fn dead_letters(client: &Client) -> Result<i64, tokio_postgres::Error> {
    count_where(client, "dead").await
}

async fn count_where(client: &Client, cond: &str) -> Result<i64, tokio_postgres::Error> {
    let sql = format!("SELECT count(*) FROM _switchyard.retry_log WHERE {cond}");
    count_if_exist(client, &["_switchyard.retry_log"], &sql, &[]).await
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
    /// The primary's transaction id (old's for old-to-new, new's for new-to-old).
    pub xid: Option<String>,
    /// Position of the statement within its transaction.
    pub ordinal: u32,
    /// Which database was the primary: where `xid` is looked up, and which one replay
    /// re-reads the rows from. Records written before the cutover existed have none and
    /// are old-to-new.
    #[serde(default = "forward")]
    pub direction: Direction,
}

fn forward() -> Direction {
    Direction::OldToNew
}

impl Origin {
    /// An origin of `direction`'s primary transaction `xid`.
    pub fn new(direction: Direction, instance: impl Into<String>, xid: Option<String>) -> Origin {
        Origin {
            instance: instance.into(),
            xid,
            ordinal: 0,
            direction,
        }
    }
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
    /// Re-sync one row by key. `key_text` is the key as the caller holds it (what the
    /// idempotency key is made of); `key` the same as a JSON value, if it parses.
    pub fn row(
        origin: &Origin,
        table: &str,
        key_text: &str,
        key: Option<serde_json::Value>,
        reason: String,
    ) -> Self {
        RetryRecord {
            idempotency_key: Self::make_key(origin, RecordKind::Row, table, key_text),
            kind: RecordKind::Row,
            table_name: Some(table.to_string()),
            key,
            statement: None,
            origin: origin.clone(),
            reason,
        }
    }

    /// Re-sync a whole table.
    pub fn table(origin: &Origin, table: &str, reason: String) -> Self {
        RetryRecord {
            idempotency_key: Self::make_key(origin, RecordKind::Table, table, ""),
            kind: RecordKind::Table,
            table_name: Some(table.to_string()),
            key: None,
            statement: None,
            origin: origin.clone(),
            reason,
        }
    }

    /// Run `sql` once; `ordinal` places it among its transaction's statements.
    pub fn statement(origin: &Origin, ordinal: u32, sql: &str, reason: String) -> Self {
        let origin = Origin {
            ordinal,
            ..origin.clone()
        };
        RetryRecord {
            idempotency_key: Self::make_key(&origin, RecordKind::Statement, "", sql),
            kind: RecordKind::Statement,
            table_name: None,
            key: None,
            statement: Some(sql.to_string()),
            origin,
            reason,
        }
    }

    /// A stable idempotency key from the origin and what the record names. Old and new
    /// hand out transaction ids independently, so a new-to-old origin's direction is part
    /// of the key; old-to-new keys stay what they were before directions existed.
    pub fn make_key(origin: &Origin, kind: RecordKind, table: &str, detail: &str) -> String {
        let mut text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}",
            origin.instance,
            origin.xid.as_deref().unwrap_or(""),
            origin.ordinal,
            kind.as_str(),
            table,
            detail
        );
        if origin.direction != Direction::OldToNew {
            text.push('\0');
            text.push_str(origin.direction.as_str());
        }
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
    }
}

/// SQL that inserts `records` into the embedded log, as one statement with the records
/// inlined as a dollar-quoted JSON literal (so it can travel in a simple Query on a
/// connection whose settings the proxy does not control).
pub fn embedded_insert_sql(records: &[RetryRecord]) -> Result<String, serde_json::Error> {
    let json = crate::ident::dollar_quoted(&serde_json::to_string(records)?);
    Ok(format!(
        "INSERT INTO _switchyard.retry_log \
         (idempotency_key, kind, table_name, key, statement, origin, reason) \
         SELECT r.idempotency_key, r.kind, r.table_name, r.key, r.statement, r.origin, r.reason \
         FROM jsonb_to_recordset({json}::jsonb) AS r(idempotency_key text, kind text, \
         table_name text, key jsonb, statement text, origin jsonb, reason text)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as proxies wrote it before origins had a direction still parses, as
    /// old-to-new; a new one carries its direction and reads back the same.
    #[test]
    fn records_without_a_direction_are_old_to_new() {
        let old = r#"{"idempotency_key":"k","kind":"row","table_name":"\"public\".\"t\"",
            "key":{"id":1},"statement":null,"origin":{"instance":"p","xid":"7","ordinal":0},
            "reason":"queued"}"#;
        let r: RetryRecord = serde_json::from_str(old).expect("an old record parses");
        assert_eq!(r.origin.direction, Direction::OldToNew);
        let mut back = r.clone();
        back.origin.direction = Direction::NewToOld;
        let json = serde_json::to_string(&back).expect("serializes");
        assert!(json.contains(r#""direction":"new-to-old""#), "{json}");
        assert_eq!(
            serde_json::from_str::<RetryRecord>(&json).expect("parses"),
            back
        );
    }

    #[test]
    fn gid_round_trip() {
        assert_eq!(xid_of_gid(&gid_for("12345")), Some("12345"));
        assert_eq!(xid_of_gid("other:1"), None);
        assert_eq!(xid_of_gid("switchyard:"), None);
        assert_eq!(xid_of_gid("switchyard:1;drop"), None);
        assert_eq!(xid_of_gid(&Direction::NewToOld.gid("7")), None);
    }

    #[test]
    fn insert_sql_survives_dollar_quotes_in_values() {
        let origin = Origin {
            ordinal: 1,
            ..Origin::new(Direction::OldToNew, "p1", Some("7".into()))
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
        let o = Origin::new(Direction::OldToNew, "p", Some("1".into()));
        let a = RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":1}");
        let b = RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":2}");
        assert_ne!(a, b);
        assert_eq!(
            a,
            RetryRecord::make_key(&o, RecordKind::Row, "t", "{\"id\":1}")
        );
        // Forward keys are as before directions existed; the same xid on new is another key.
        assert_eq!(
            a,
            format!(
                "{:032x}",
                xxhash_rust::xxh3::xxh3_128(b"p\x001\x000\x00row\x00t\x00{\"id\":1}")
            )
        );
        let reverse = Origin {
            direction: Direction::NewToOld,
            ..o
        };
        assert_ne!(
            a,
            RetryRecord::make_key(&reverse, RecordKind::Row, "t", "{\"id\":1}")
        );
    }
}
