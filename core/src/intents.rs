//! Intents: how `mirror.mode = "lockstep"` keeps the secondary equal without prepared
//! transactions. The primary's transaction records, atomically with its commit, what it
//! changed (its re-sync orders) and the id of the secondary's transaction that applied the
//! same changes; the primary commits, then the secondary. Once the secondary committed, the
//! proxy deletes the intent in a batch, off the client's path.
//!
//! An intent still there after a while means the proxy died between the two commits or the
//! secondary's COMMIT failed. [`resolve`] asks the secondary about its transaction: if it
//! committed, the intent is deleted; if it aborted (or the secondary no longer knows it),
//! the intent's orders move into the retry log in one primary transaction, and replay
//! applies them like any other (keys re-synced from the primary's current rows, so order
//! does not matter; statements once each).

use crate::catalog::count_if_exist;
use crate::direction::Direction;
use crate::retry::{Origin, RecordKind, RetryRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::Client;

// The table lives beside the retry log: `retry::EMBEDDED_SCHEMA_SQL` creates both.

/// What an intent keeps of a transaction's re-sync orders: the parts that differ between
/// them (each order's origin is the intent's own), a third of their full size, written on
/// every commit.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Orders {
    #[serde(rename = "d")]
    direction: Direction,
    /// Keys by table.
    #[serde(rename = "k", default)]
    keys: Vec<(String, Vec<serde_json::Value>)>,
    /// Tables re-synced whole, with why.
    #[serde(rename = "t", default)]
    tables: Vec<(String, String)>,
    /// Statements with their ordinal and why.
    #[serde(rename = "s", default)]
    statements: Vec<(u32, String, String)>,
}

impl Orders {
    fn of(records: &[RetryRecord]) -> Orders {
        let mut o = Orders::default();
        for r in records {
            o.direction = r.origin.direction;
            let table = r.table_name.clone().unwrap_or_default();
            match r.kind {
                RecordKind::Row => {
                    let key = r.key.clone().unwrap_or(serde_json::Value::Null);
                    match o.keys.last_mut() {
                        Some((t, keys)) if *t == table => keys.push(key),
                        _ => o.keys.push((table, vec![key])),
                    }
                }
                RecordKind::Table => o.tables.push((table, r.reason.clone())),
                RecordKind::Statement => o.statements.push((
                    r.origin.ordinal,
                    r.statement.clone().unwrap_or_default(),
                    r.reason.clone(),
                )),
            }
        }
        o
    }

    /// The orders again, as the retry log takes them.
    fn records(&self, via: &str, xid: &str) -> Vec<RetryRecord> {
        let origin = Origin {
            instance: via.to_string(),
            xid: Some(xid.to_string()),
            ordinal: 0,
            direction: self.direction,
        };
        let reason = "intent left behind: the secondary did not commit".to_string();
        let mut out = Vec::new();
        for (table, keys) in &self.keys {
            for key in keys {
                let text = key.to_string();
                out.push(RetryRecord::row(
                    &origin,
                    table,
                    &text,
                    Some(key.clone()),
                    reason.clone(),
                ));
            }
        }
        for (table, why) in &self.tables {
            out.push(RetryRecord::table(&origin, table, why.clone()));
        }
        for (ordinal, sql, why) in &self.statements {
            out.push(RetryRecord::statement(&origin, *ordinal, sql, why.clone()));
        }
        out
    }
}

/// The statement that records the current transaction's intent on the primary.
pub fn insert_sql(
    via: &str,
    secondary_xid: &str,
    records: &[RetryRecord],
) -> Result<String, serde_json::Error> {
    let json = crate::ident::dollar_quoted(&serde_json::to_string(&Orders::of(records))?);
    Ok(format!(
        "INSERT INTO _switchyard.intents (xid, via, secondary_xid, records) \
         VALUES (pg_catalog.pg_current_xact_id(), {}, {}, {json})",
        crate::ident::quote_literal(via),
        crate::ident::quote_literal(secondary_xid),
    ))
}

/// What the secondary's transaction writes beside the applies: the mark recovery looks for.
pub fn mark_sql(primary_xid: &str) -> String {
    format!(
        "INSERT INTO _switchyard.applied_intents (xid) VALUES ({})",
        crate::ident::quote_literal(primary_xid)
    )
}

/// On the secondary: makes every commit it acknowledged so far durable (a transaction
/// committed with `synchronous_commit = on` flushes the WAL up to its commit record, and
/// every earlier commit record lies before it), deletes the marks of `settled` (primary
/// transaction ids whose intents are gone), and returns those of `committed` whose marks it
/// found. Until such a flush, a commit acknowledged under `synchronous_commit = off` can
/// still be lost in a crash and its intent must stay; a mark not found was lost so (the
/// secondary restarted since it acknowledged the commit), and its intent is left to
/// recovery.
///
/// PostgreSQL flushes at COMMIT only for a transaction that wrote WAL before its commit
/// record (`RecordTransactionCommit`): an id alone, or a DELETE that finds no row, commits
/// asynchronously and flushes nothing. So the transaction always writes and removes a row of
/// its own, named after its id (no two sweepers touch the same row).
pub async fn flush_commits(
    secondary: &Client,
    settled: &[String],
    committed: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    // One statement on the marks of `xids` (none when there are none).
    let on_marks = |what: &str, xids: &[String]| {
        if xids.is_empty() {
            return String::new();
        }
        let list: Vec<String> = xids
            .iter()
            .map(|x| crate::ident::quote_literal(x))
            .collect();
        format!(
            "{what} FROM _switchyard.applied_intents WHERE xid IN ({}); ",
            list.join(", ")
        )
    };
    let delete = on_marks("DELETE", settled);
    let check = on_marks("SELECT xid", committed);
    let own = "'flush ' || pg_catalog.pg_current_xact_id()";
    let replies = secondary
        .simple_query(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; \
             INSERT INTO _switchyard.applied_intents (xid) VALUES ({own}); \
             DELETE FROM _switchyard.applied_intents WHERE xid = {own}; {delete}{check}COMMIT"
        ))
        .await?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

/// Deletes the intents of transactions the secondary committed (primary transaction ids);
/// only after [`flush_commits`] on the secondary.
pub async fn clear(primary: &Client, xids: &[String]) -> Result<u64, tokio_postgres::Error> {
    primary
        .execute(
            "DELETE FROM _switchyard.intents WHERE xid = ANY ($1::text[]::xid8[])",
            &[&xids],
        )
        .await
}

/// Intents on a primary: all, and those of one instance (`via`).
pub async fn count(primary: &Client, via: Option<&str>) -> Result<i64, tokio_postgres::Error> {
    count_if_exist(
        primary,
        &["_switchyard.intents"],
        "SELECT count(*) FROM _switchyard.intents WHERE $1::text IS NULL OR via = $1",
        &[&via],
    )
    .await
}

/// What one pass of [`resolve`] did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct IntentReport {
    /// The secondary had committed: only the intent was left.
    pub cleared: u64,
    /// The secondary had not: their orders went to the retry log.
    pub queued: u64,
    /// Re-sync orders those carried.
    pub records: u64,
    /// The secondary's transaction is still running: looked at again later.
    pub pending: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("reading intents on the primary: {0}")]
    Read(#[source] tokio_postgres::Error),
    #[error("asking the secondary about transaction {xid}: {source}")]
    Status {
        xid: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("an intent's orders are unreadable: {0}")]
    Records(#[from] serde_json::Error),
    #[error("moving an intent into the retry log on the primary: {0}")]
    Queue(#[source] tokio_postgres::Error),
}

/// Settles the intents at least `min_age` old (younger ones belong to commits in progress):
/// see the module documentation. Safe to run from several places at once: an intent is
/// taken under `FOR UPDATE SKIP LOCKED` and moved in the same primary transaction (on
/// `primary`, which must not be shared with other tasks meanwhile).
pub async fn resolve(
    primary: &mut Client,
    secondary: &Client,
    min_age: Duration,
) -> Result<IntentReport, IntentError> {
    let mut report = IntentReport::default();
    let mut cleared = Vec::new();
    if count(primary, None).await.map_err(IntentError::Read)? == 0 {
        return Ok(report);
    }
    let rows = primary
        .query(
            "SELECT xid::text, secondary_xid FROM _switchyard.intents \
             WHERE created_at <= clock_timestamp() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT 1000",
            &[&min_age.as_secs_f64()],
        )
        .await
        .map_err(IntentError::Read)?;
    // Whether each secondary transaction still runs (an id the secondary handed out again
    // after a crash may be running too: then this waits a little longer, harmlessly; one
    // it lost in a crash and has not handed out again lies at or past the next id, where
    // `pg_xact_status` would refuse it).
    let mut ended = Vec::new();
    for row in rows {
        let (xid, secondary_xid): (String, String) = (row.get(0), row.get(1));
        let running: bool = secondary
            .query_one(
                "SELECT CASE WHEN $1::text::xid8 >= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()) \
                 THEN false ELSE pg_catalog.pg_xact_status($1::text::xid8) IS NOT DISTINCT FROM 'in progress' END",
                &[&secondary_xid],
            )
            .await
            .map_err(|source| IntentError::Status {
                xid: secondary_xid.clone(),
                source,
            })?
            .get(0);
        if running {
            report.pending += 1;
        } else {
            ended.push(xid);
        }
    }
    if ended.is_empty() {
        return Ok(report);
    }
    // Ended, its mark is there if and only if it committed; the flush that finds the mark
    // also makes the commit durable, so the intent can go.
    let committed = flush_commits(secondary, &[], &ended)
        .await
        .map_err(|source| IntentError::Status {
            xid: "(flush)".into(),
            source,
        })?;
    for xid in ended {
        if committed.contains(&xid) {
            report.cleared += clear(primary, std::slice::from_ref(&xid))
                .await
                .map_err(IntentError::Read)?;
            cleared.push(xid);
        } else if let Some(n) = queue(&mut *primary, &xid).await? {
            report.queued += 1;
            report.records += n;
        }
    }
    if !cleared.is_empty() {
        let _ = flush_commits(secondary, &cleared, &[]).await;
    }
    Ok(report)
}

/// Moves one intent's orders into the retry log and deletes it, in one transaction; None
/// when another resolver took it first.
async fn queue(primary: &mut Client, xid: &str) -> Result<Option<u64>, IntentError> {
    let tx = primary.transaction().await.map_err(IntentError::Queue)?;
    let Some(row) = tx
        .query_opt(
            "SELECT records::text, via FROM _switchyard.intents WHERE xid = $1::text::xid8 \
             FOR UPDATE SKIP LOCKED",
            &[&xid],
        )
        .await
        .map_err(IntentError::Queue)?
    else {
        return Ok(None);
    };
    let orders: Orders = serde_json::from_str(row.get(0))?;
    let records = orders.records(row.get(1), xid);
    if !records.is_empty() {
        tx.batch_execute(&crate::retry::embedded_insert_sql(&records)?)
            .await
            .map_err(IntentError::Queue)?;
    }
    tx.execute(
        "DELETE FROM _switchyard.intents WHERE xid = $1::text::xid8",
        &[&xid],
    )
    .await
    .map_err(IntentError::Queue)?;
    tx.commit().await.map_err(IntentError::Queue)?;
    Ok(Some(records.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        kind: RecordKind,
        table: Option<&str>,
        key: Option<&str>,
        sql: Option<&str>,
        ordinal: u32,
    ) -> RetryRecord {
        let origin = Origin {
            instance: "p'1".into(),
            xid: Some("42".into()),
            ordinal,
            direction: Direction::NewToOld,
        };
        let key: Option<serde_json::Value> = key.map(|k| serde_json::from_str(k).expect("json"));
        RetryRecord {
            idempotency_key: RetryRecord::make_key(
                &origin,
                kind,
                table.unwrap_or(""),
                &key.as_ref()
                    .map(|k| k.to_string())
                    .or(sql.map(str::to_string))
                    .unwrap_or_default(),
            ),
            kind,
            table_name: table.map(str::to_string),
            key,
            statement: sql.map(str::to_string),
            origin,
            reason: "why".into(),
        }
    }

    #[test]
    fn orders_come_back_as_the_records_they_were_made_of() {
        let records = vec![
            record(
                RecordKind::Row,
                Some("\"public\".\"a\""),
                Some(r#"{"id":1}"#),
                None,
                0,
            ),
            record(
                RecordKind::Row,
                Some("\"public\".\"a\""),
                Some(r#"{"id":2}"#),
                None,
                0,
            ),
            record(
                RecordKind::Row,
                Some("\"public\".\"b\""),
                Some(r#"{"k":"x"}"#),
                None,
                0,
            ),
            record(RecordKind::Table, Some("\"public\".\"big\""), None, None, 0),
            record(
                RecordKind::Statement,
                None,
                None,
                Some("INSERT INTO h VALUES ('$sy$')"),
                1,
            ),
        ];
        let sql = insert_sql("p'1", "77", &records).expect("serializes");
        assert!(sql.contains(r"E'p\'1', E'77', $syx${"), "{sql}");
        assert!(sql.ends_with("}$syx$)"), "{sql}");
        let orders = Orders::of(&records);
        assert_eq!(orders.keys.len(), 2, "keys grouped by table");
        let back = orders.records("p'1", "42");
        assert_eq!(back.len(), records.len());
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(
                (
                    &b.idempotency_key,
                    b.kind,
                    &b.table_name,
                    &b.key,
                    &b.statement,
                    &b.origin
                ),
                (
                    &r.idempotency_key,
                    r.kind,
                    &r.table_name,
                    &r.key,
                    &r.statement,
                    &r.origin
                )
            );
        }
    }
}
