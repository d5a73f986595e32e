//! A TRUNCATE from the change log, applied so that its place in time does not matter.
//!
//! The log is drained a little after the fact (and from several instances at once), while
//! the proxy's lockstep transactions reach the target at once. A TRUNCATE made straight on
//! the primary and applied from the log after a later lockstep transaction had written the
//! same table would empty what that transaction wrote. So a logged TRUNCATE makes the
//! target's tables equal to the primary's current rows instead, the way keyed rows are
//! re-synced from the primary's current rows:
//!
//! 1. primary: `REPEATABLE READ`, `LOCK TABLE ... IN SHARE MODE`: writers of the tables wait,
//!    and every transaction that wrote them has committed or aborted on the primary before
//!    the snapshot is taken;
//! 2. target: `TRUNCATE` waits for the lockstep transactions still holding the tables there
//!    (they committed on the primary, their commit on the target follows), then the
//!    primary's rows are copied in (binary COPY, as the backfill does);
//! 3. the later log rows of those tables that the copy already holds are marked applied in
//!    the same target transaction, so a table without a key does not get them twice;
//! 4. commit the target, then the primary (which lets writers go on).
//!
//! When a statement (DDL) comes later in the log the copy could carry a shape the target
//! does not have yet: the TRUNCATE is then applied as it stands, in log order (as is one
//! left behind by a lockstep transaction, drained after the whole log).

use super::apply::{mark_applied, truncate_sql};
use crate::catalog::TableMeta;
use crate::connect::Writer;
use crate::ident::quote_ident;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{Client, IsolationLevel};

/// How long the drain waits for the primary's writers of a truncated table: a long
/// transaction holding one must not stall that table's writers behind the lock request.
const LOCK_TIMEOUT: &str = "5s";

/// Later rows of the truncated tables that the copy holds, as once-only marks; none when a
/// statement follows in the log, or rows written through a partitioned table above one of
/// them (such rows name the partitioned table, so which of them the copy holds is not
/// known here).
const LATER_SQL: &str = "\
WITH tables AS (SELECT unnest($2::oid[]) AS relid),
above AS (SELECT a.relid FROM tables t, pg_catalog.pg_partition_ancestors(t.relid::regclass) a
          WHERE a.relid <> t.relid)
SELECT CASE WHEN EXISTS (SELECT 1 FROM _switchyard.capture_log l
                         WHERE l.id > $1 AND (l.op = 'S' OR l.relid IN (SELECT relid FROM above)))
              OR EXISTS (SELECT 1 FROM _switchyard.capture_lockstep k
                         WHERE k.relid IN (SELECT relid FROM above))
            THEN NULL
            ELSE array(
              SELECT 'log:' || l.id FROM _switchyard.capture_log l
              WHERE l.id > $1 AND l.relid IN (SELECT relid FROM tables)
              UNION ALL
              SELECT 'lockstep:' || k.seq FROM _switchyard.capture_lockstep k
              WHERE k.relid IN (SELECT relid FROM tables))
       END";

/// One TRUNCATE command of the log.
pub(super) struct Truncated {
    /// The tables it emptied that are still there (partitions themselves; partitioned
    /// tables left out), as the target has them.
    pub metas: Vec<TableMeta>,
    /// Their oids on the primary.
    pub relids: Vec<u32>,
    /// The log id of its first row: later rows have greater ones.
    pub first_id: i64,
    /// The once-only marks of its rows.
    pub marks: Vec<String>,
    /// Applied as it stands, in the order it was drained (leftovers of lockstep
    /// transactions, drained after the whole log).
    pub in_order: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("{what} on the primary: {source}")]
    Primary {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("applying {what} from the change log on the target: {source}")]
    Target {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Applies one TRUNCATE command of the log as described above.
pub(super) async fn replace_truncated(
    source: &mut Client,
    target: &mut Writer,
    t: Truncated,
) -> Result<(), ReplaceError> {
    let Truncated {
        metas,
        relids,
        first_id,
        marks,
        in_order,
    } = t;
    let on_primary = |what: &'static str| move |source| ReplaceError::Primary { what, source };
    let on_target = |what: &str| {
        let what = what.to_string();
        move |source| ReplaceError::Target { what, source }
    };
    let names: Vec<String> = metas.iter().map(TableMeta::quoted).collect();
    let primary = source
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(on_primary("starting the read of the truncated tables"))?;
    let mut later: Option<Vec<String>> = None;
    if !names.is_empty() && !in_order {
        primary
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN SHARE MODE",
                names.join(", ")
            ))
            .await
            .map_err(on_primary("locking the truncated tables against writes"))?;
        later = primary
            .query_one(LATER_SQL, &[&first_id, &relids])
            .await
            .map_err(on_primary("reading the later change-log rows"))?
            .get(0);
    }
    let tx = target
        .transaction()
        .await
        .map_err(on_target("a transaction"))?;
    let fresh = mark_applied(&tx, &marks)
        .await
        .map_err(on_target("the once-only mark"))?;
    if fresh > 0 && !names.is_empty() {
        match &later {
            None => {
                let sql = truncate_sql(&names);
                tx.batch_execute(&sql).await.map_err(on_target(&sql))?;
            }
            Some(held) => {
                mark_applied(&tx, held)
                    .await
                    .map_err(on_target("the marks of the rows the copy holds"))?;
                replace_rows(&primary, &tx, &metas).await?;
            }
        }
    }
    tx.commit().await.map_err(on_target("the commit"))?;
    primary
        .commit()
        .await
        .map_err(on_primary("ending the read of the truncated tables"))?;
    Ok(())
}

/// Empties the tables on the target (in one statement: they may reference each other) and
/// loads the primary's rows into them.
async fn replace_rows(
    primary: &tokio_postgres::Transaction<'_>,
    target: &tokio_postgres::Transaction<'_>,
    metas: &[TableMeta],
) -> Result<(), ReplaceError> {
    let apply = |what: String| move |source| ReplaceError::Target { what, source };
    let mut scopes = Vec::with_capacity(metas.len());
    for meta in metas {
        let name = meta.quoted();
        let partitioned: bool = target
            .query_one(
                "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1::text::regclass",
                &[&name],
            )
            .await
            .map_err(apply(format!("looking up {name}")))?
            .get(0);
        // A partitioned table holds its rows in its partitions, which TRUNCATE and COPY
        // reach through it; other tables are taken alone (inheritance children are tables
        // of their own, with their own log rows).
        scopes.push(if partitioned { "" } else { "ONLY " });
    }
    let truncate = format!(
        "TRUNCATE {}",
        metas
            .iter()
            .zip(&scopes)
            .map(|(m, only)| format!("{only}{}", m.quoted()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    target
        .batch_execute(&truncate)
        .await
        .map_err(apply(truncate.clone()))?;
    for (meta, only) in metas.iter().zip(scopes) {
        copy_rows(primary, target, meta, only).await?;
    }
    Ok(())
}

/// Copies the primary's rows of `meta`'s table into the target's.
async fn copy_rows(
    primary: &tokio_postgres::Transaction<'_>,
    target: &tokio_postgres::Transaction<'_>,
    meta: &TableMeta,
    only: &str,
) -> Result<(), ReplaceError> {
    let name = meta.quoted();
    let apply = |what: String| move |source| ReplaceError::Target { what, source };
    let read = |source| ReplaceError::Primary {
        what: "reading the rows of a truncated table",
        source,
    };
    let columns = meta
        .writable_columns()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = primary
        .copy_out(&format!(
            "COPY (SELECT {columns} FROM {only}{name}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .map_err(read)?;
    let sink = target
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {name} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(apply(format!("starting COPY into {name}")))?;
    futures_util::pin_mut!(rows, sink);
    while let Some(piece) = rows.next().await {
        sink.feed(piece.map_err(read)?)
            .await
            .map_err(apply(format!("copying rows into {name}")))?;
    }
    sink.finish()
        .await
        .map_err(apply(format!("copying rows into {name}")))?;
    Ok(())
}
