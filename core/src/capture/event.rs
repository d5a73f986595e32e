//! One drained change: a statement's rows of one table (up to ~256 KB of images), or a
//! marker (TRUNCATE, a statement mirrored as text).

use serde::Deserialize;

/// What an event asks of the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Rows inserted: their images.
    Insert,
    /// Rows updated: their new images (keys that went away arrive as a `DeleteKeys` first).
    Update,
    /// Keyed table: the keys of deleted rows (or of rows whose key changed).
    DeleteKeys,
    /// Table without a primary key: whole images of removed rows; each removes one equal row.
    DeleteRows,
    /// `TRUNCATE` of the table.
    Truncate,
    /// A statement mirrored as text (DDL), with the search_path it ran under.
    Statement,
}

impl Op {
    /// The code the capture triggers write.
    pub fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            b'I' => Op::Insert,
            b'U' => Op::Update,
            b'D' => Op::DeleteKeys,
            b'd' => Op::DeleteRows,
            b'T' => Op::Truncate,
            b'S' => Op::Statement,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::DeleteKeys => "delete",
            Op::DeleteRows => "delete_rows",
            Op::Truncate => "truncate",
            Op::Statement => "statement",
        }
    }
}

/// One row of `_switchyard.drain()` or of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The primary's transaction id (`xid8` as text).
    pub xid: String,
    pub seq: i64,
    /// The table as the trigger saw it (a partition when a partition was written directly).
    pub relid: u32,
    /// `_switchyard.tables.version` of the table (of its partition root) when drained: it
    /// changes with every DDL on the table, so metadata cached by it is never stale.
    pub version: Option<i64>,
    pub op: Op,
    /// A JSON array (images or keys), or for `Statement` a JSON object; None for `Truncate`.
    pub rows: Option<String>,
}

/// Why a drained row could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("capture row: column {0} is missing or not readable")]
    Column(&'static str),
    #[error("capture row: unknown operation {0:?}")]
    Op(String),
}

impl Event {
    /// From the text values of a drain row: xid, seq, relid, version, op, rows.
    pub fn from_text(values: &[Option<&[u8]>]) -> Result<Event, EventError> {
        let text = |i: usize, what: &'static str| -> Result<&str, EventError> {
            values
                .get(i)
                .copied()
                .flatten()
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(EventError::Column(what))
        };
        let number = |i: usize, what: &'static str| -> Result<i64, EventError> {
            text(i, what)?.parse().map_err(|_| EventError::Column(what))
        };
        let op_text = text(4, "op")?;
        let op = op_text
            .bytes()
            .next()
            .and_then(Op::from_code)
            .ok_or_else(|| EventError::Op(op_text.to_string()))?;
        Ok(Event {
            xid: text(0, "xid")?.to_string(),
            seq: number(1, "seq")?,
            relid: u32::try_from(number(2, "relid")?).map_err(|_| EventError::Column("relid"))?,
            version: match values.get(3).copied().flatten() {
                Some(_) => Some(number(3, "version")?),
                None => None,
            },
            op,
            rows: values
                .get(5)
                .copied()
                .flatten()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        })
    }

    /// The statement of a `Statement` event and the search_path it ran under.
    pub fn statement(&self) -> Option<(String, Option<String>)> {
        #[derive(Deserialize)]
        struct S {
            sql: String,
            search_path: Option<String>,
        }
        let s: S = serde_json::from_str(self.rows.as_deref()?).ok()?;
        Some((s.sql, s.search_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_drain_row() {
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"771"),
            Some(b"12"),
            Some(b"16384"),
            Some(b"3"),
            Some(b"D"),
            Some(br#"[{"id": 2}]"#),
        ];
        let e = Event::from_text(&row).expect("reads");
        assert_eq!(e.op, Op::DeleteKeys);
        assert_eq!(e.relid, 16384);
        assert_eq!(e.version, Some(3));
        let truncate: Vec<Option<&[u8]>> = vec![
            Some(b"771"),
            Some(b"13"),
            Some(b"16384"),
            None,
            Some(b"T"),
            None,
        ];
        let e = Event::from_text(&truncate).expect("reads");
        assert_eq!((e.op, e.version, e.rows), (Op::Truncate, None, None));
        let bad: Vec<Option<&[u8]>> = vec![Some(b"1"), Some(b"1"), Some(b"1"), None, Some(b"Q")];
        assert!(matches!(Event::from_text(&bad), Err(EventError::Op(_))));
    }

    #[test]
    fn statement_events_carry_their_search_path() {
        let e = Event {
            xid: "1".into(),
            seq: 1,
            relid: 0,
            version: None,
            op: Op::Statement,
            rows: Some(
                r#"{"sql": "ALTER TABLE t ADD c int", "search_path": "app, public"}"#.into(),
            ),
        };
        assert_eq!(
            e.statement(),
            Some(("ALTER TABLE t ADD c int".into(), Some("app, public".into())))
        );
    }
}
