//! Draining the durable change log (`_switchyard.capture_log`): changes no proxy mirrored in
//! lockstep (sessions connected straight to the primary, a cron job, a DBA's psql, and writes
//! a proxy passed through without claiming their transaction). Only committed rows are
//! visible, so nothing is applied before its transaction committed.
//!
//! A batch is claimed with `FOR UPDATE SKIP LOCKED` (proxy instances and reconcilers share
//! the work), applied, then deleted in the claiming transaction:
//! - keyed tables: the keys are re-synced from the primary's current rows under a row lock
//!   (`resync`), so order and repetition do not matter;
//! - tables without a key and statements: applied from the log itself, once, recorded in
//!   `_switchyard.applied_statements` on the target in the same transaction;
//! - TRUNCATE: the tables are made equal to the primary's current rows, once
//!   (`log_truncate`), so a lockstep transaction that wrote them meanwhile keeps its rows.

use super::apply::ApplySql;
use super::event::{Event, Op};
use crate::catalog::{count_if_exist, load_table, CatalogError, TableMeta};
use crate::connect::Writer;
use crate::ident::QualifiedName;
use crate::key::KeyText;
use crate::resync::{resync_keys, ResyncError};
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::Client;

/// What one pass over the log did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// Log rows applied and removed.
    pub events: u64,
    /// Of those, rows written by sessions outside every proxy (`via` unset).
    pub outside_proxy: u64,
    pub keys_resynced: u64,
    pub statements: u64,
    /// Rows of tables that no longer exist, dropped without applying.
    pub gone: u64,
    /// Of `events`, rows a claimed transaction committed without draining.
    pub leftovers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("reading the change log on the primary: {0}")]
    Claim(#[source] tokio_postgres::Error),
    #[error("a change-log row is unreadable: {0}")]
    Event(#[from] super::event::EventError),
    #[error("looking up table oid {oid} on the primary: {source}")]
    Name {
        oid: u32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Resync(#[from] ResyncError),
    #[error("applying {what} from the change log on the target: {source}")]
    Apply {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Replace(#[from] super::log_truncate::ReplaceError),
    #[error("table oid {0} no longer exists on the primary")]
    Gone(u32),
    #[error("a key in the change log for {table} is unreadable: {detail}")]
    Key { table: String, detail: String },
}

/// Row count and age in seconds of the oldest row of the log.
pub async fn backlog(primary: &Client) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = primary
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(captured_at)), 0)::float8 \
             FROM _switchyard.capture_log",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Committed change-log rows on `client`'s database not yet applied to the other one: the
/// log, and lockstep rows a committed transaction left behind (both drained by replay);
/// 0 where capture is not installed. For the cutover's pre-flight, on the primary of the
/// direction being left.
pub async fn pending(client: &Client) -> Result<i64, tokio_postgres::Error> {
    count_if_exist(
        client,
        &["_switchyard.capture_log", "_switchyard.capture_lockstep"],
        "SELECT (SELECT count(*) FROM _switchyard.capture_log) \
              + (SELECT count(*) FROM _switchyard.capture_lockstep)",
        &[],
    )
    .await
}

/// Tables known by the primary's oid: the name comes from the primary, the columns and key
/// from the target (where the rows are written).
#[derive(Default)]
pub struct LogTables {
    by_oid: HashMap<u32, (TableMeta, ApplySql)>,
}

impl LogTables {
    async fn get(
        &mut self,
        primary: &Client,
        target: &Client,
        oid: u32,
    ) -> Result<&(TableMeta, ApplySql), LogError> {
        use std::collections::hash_map::Entry;
        match self.by_oid.entry(oid) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let row = primary
                    .query_opt(
                        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.oid = coalesce(pg_partition_root($1::oid::regclass)::oid, $1::oid)",
                        &[&oid],
                    )
                    .await
                    .map_err(|source| LogError::Name { oid, source })?
                    .ok_or(LogError::Gone(oid))?;
                let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
                let meta = load_table(target, &name).await?;
                let sql = ApplySql::from(&meta);
                Ok(e.insert((meta, sql)))
            }
        }
    }

    /// Forget everything (after an error: a table may have changed).
    pub fn clear(&mut self) {
        self.by_oid.clear();
    }
}

/// Applies up to `limit` committed log rows to `target` (a writer session: its own triggers
/// stay quiet). `claim` holds the claimed rows' locks; `source` re-reads rows on the
/// primary. Returns what it did (zero events when the log is empty or every row is claimed
/// by someone else).
pub async fn drain_once(
    claim: &mut Client,
    source: &mut Client,
    target: &mut Writer,
    tables: &mut LogTables,
    limit: i64,
) -> Result<LogReport, LogError> {
    let mut report = drain_from(claim, source, target, tables, limit, Source::Log).await?;
    // Rows of the lockstep table are drained by their own transaction before it commits;
    // one that committed with rows left (a write the proxy did not expect in a claimed
    // transaction) is applied from here, and counted.
    let leftovers = drain_from(
        claim,
        source,
        target,
        tables,
        limit,
        Source::LockstepLeftovers,
    )
    .await?;
    report.leftovers = leftovers.events;
    report.events += leftovers.events;
    report.keys_resynced += leftovers.keys_resynced;
    report.statements += leftovers.statements;
    report.gone += leftovers.gone;
    Ok(report)
}

/// Which table a pass drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Log,
    LockstepLeftovers,
}

impl Source {
    fn claim_sql(self) -> &'static str {
        match self {
            Source::Log => {
                "SELECT l.id, l.xid::text, l.seq, l.relid, NULL::bigint, l.op::text, l.rows::text, l.via \
                 FROM _switchyard.capture_log l ORDER BY l.id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            Source::LockstepLeftovers => {
                "SELECT l.seq, l.xid::text, l.seq, l.relid, NULL::bigint, l.op::text, l.rows::text, 'lockstep'::text \
                 FROM _switchyard.capture_lockstep l ORDER BY l.seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
        }
    }

    fn delete_sql(self) -> &'static str {
        match self {
            Source::Log => "DELETE FROM _switchyard.capture_log WHERE id = ANY($1)",
            Source::LockstepLeftovers => {
                "DELETE FROM _switchyard.capture_lockstep WHERE seq = ANY($1)"
            }
        }
    }

    /// The once-only mark of row `id` on the target.
    fn mark(self, id: i64) -> String {
        match self {
            Source::Log => format!("log:{id}"),
            Source::LockstepLeftovers => format!("lockstep:{id}"),
        }
    }
}

async fn drain_from(
    claim: &mut Client,
    source: &mut Client,
    target: &mut Writer,
    tables: &mut LogTables,
    limit: i64,
    from: Source,
) -> Result<LogReport, LogError> {
    let tx = claim.transaction().await.map_err(LogError::Claim)?;
    let rows = tx
        .query(from.claim_sql(), &[&limit])
        .await
        .map_err(LogError::Claim)?;
    let mut report = LogReport::default();
    if rows.is_empty() {
        tx.commit().await.map_err(LogError::Claim)?;
        return Ok(report);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.get(0);
        let values: Vec<Option<String>> = vec![
            r.get(1),
            Some(r.get::<_, i64>(2).to_string()),
            Some(r.get::<_, u32>(3).to_string()),
            None,
            r.get(5),
            r.get(6),
        ];
        let bytes: Vec<Option<&[u8]>> = values
            .iter()
            .map(|v| v.as_deref().map(str::as_bytes))
            .collect();
        events.push((id, Event::from_text(&bytes)?));
        if r.get::<_, Option<String>>(7).is_none() {
            report.outside_proxy += 1;
        }
        ids.push(id);
    }
    // Keyed rows are gathered per table and re-synced after the once-only events that come
    // before them are applied; a TRUNCATE or statement is a barrier.
    let mut keys: BTreeMap<u32, Vec<serde_json::Value>> = BTreeMap::new();
    let mut i = 0;
    while i < events.len() {
        let (id, e) = &events[i];
        match e.op {
            Op::Statement | Op::Truncate => {
                flush_keys(source, target, tables, &mut keys, &mut report).await?;
                // Tables truncated by one command are truncated by one statement.
                let mut end = i + 1;
                while e.op == Op::Truncate
                    && events
                        .get(end)
                        .is_some_and(|(_, n)| n.op == Op::Truncate && n.xid == e.xid)
                {
                    end += 1;
                }
                let group: Vec<(i64, &Event)> =
                    events[i..end].iter().map(|(id, e)| (*id, e)).collect();
                if e.op == Op::Truncate {
                    let truncated = truncated(source, target, &group, from).await?;
                    super::log_truncate::replace_truncated(source, target, truncated).await?;
                } else {
                    apply_once(source, target, tables, &group, from).await?;
                }
                report.statements += 1;
                i = end;
            }
            _ => {
                let sql = match tables.get(source, target, e.relid).await {
                    Ok((_, sql)) => sql,
                    // Dropped since (a temporary table, or one dropped by a later DDL): its
                    // rows went with it.
                    Err(LogError::Gone(_)) => {
                        report.gone += 1;
                        i += 1;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                let rows = e.rows.as_deref().unwrap_or("[]");
                if sql.has_key() {
                    let k = sql.keys_of(rows).map_err(|err| LogError::Key {
                        table: sql.name.clone(),
                        detail: err.to_string(),
                    })?;
                    keys.entry(e.relid).or_default().extend(k);
                } else {
                    apply_once(source, target, tables, &[(*id, e)], from).await?;
                }
                i += 1;
            }
        }
    }
    flush_keys(source, target, tables, &mut keys, &mut report).await?;
    tx.execute(from.delete_sql(), &[&ids])
        .await
        .map_err(LogError::Claim)?;
    tx.commit().await.map_err(LogError::Claim)?;
    report.events = ids.len() as u64;
    Ok(report)
}

/// What applying one TRUNCATE command of the log needs to know of it. Each row names the
/// table it emptied: a partition itself (not its root, as rows do), or a partitioned table,
/// whose partitions have rows of their own in the same command and which is left out.
async fn truncated(
    source: &mut Client,
    target: &mut Writer,
    group: &[(i64, &Event)],
    from: Source,
) -> Result<super::log_truncate::Truncated, LogError> {
    let mut metas: Vec<TableMeta> = Vec::new();
    let mut relids = Vec::new();
    for (_, e) in group {
        let oid = e.relid;
        let row = source
            .query_opt(
                "SELECT n.nspname::text, c.relname::text, c.relkind = 'p' FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
                &[&oid],
            )
            .await
            .map_err(|source| LogError::Name { oid, source })?;
        // Dropped since (its rows went with it), or partitioned.
        let Some(row) = row.filter(|r| !r.get::<_, bool>(2)) else {
            continue;
        };
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let meta = load_table(target, &name).await?;
        if !metas.iter().any(|m| m.quoted() == meta.quoted()) {
            metas.push(meta);
            relids.push(oid);
        }
    }
    Ok(super::log_truncate::Truncated {
        metas,
        relids,
        first_id: group.first().map_or(0, |(id, _)| *id),
        marks: group.iter().map(|(id, _)| from.mark(*id)).collect(),
        // Leftovers of lockstep transactions come after the whole log in a drain.
        in_order: from != Source::Log,
    })
}

async fn flush_keys(
    source: &mut Client,
    target: &mut Writer,
    tables: &mut LogTables,
    keys: &mut BTreeMap<u32, Vec<serde_json::Value>>,
    report: &mut LogReport,
) -> Result<(), LogError> {
    for (oid, objects) in std::mem::take(keys) {
        let (meta, _) = tables.get(source, target, oid).await?.clone();
        let texts: Vec<KeyText> = objects
            .iter()
            .map(|o| {
                meta.key_columns()
                    .map(|c| match o.get(&c.name) {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(other) => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect();
        let counts = resync_keys(source, target, &meta, &texts).await?;
        report.keys_resynced += counts.upserted + counts.deleted + counts.unchanged;
    }
    Ok(())
}

/// Applies events that cannot be re-read by key (rows of a keyless table, a statement),
/// exactly once: the log ids are recorded on the target in the same transaction. (A
/// TRUNCATE goes through `log_truncate`.)
async fn apply_once(
    source: &Client,
    target: &mut Writer,
    tables: &mut LogTables,
    group: &[(i64, &Event)],
    from: Source,
) -> Result<(), LogError> {
    let mut statements: Vec<(String, Option<String>)> = Vec::new();
    for (_, e) in group {
        match e.op {
            Op::Statement => {
                if let Some((sql, path)) = e.statement() {
                    statements.push((sql, path));
                }
            }
            Op::Truncate => {}
            Op::DeleteRows => {
                let sql = tables
                    .get(source, target, e.relid)
                    .await?
                    .1
                    .delete_rows
                    .clone();
                statements.push((
                    ApplySql::inline(&sql, e.rows.as_deref().unwrap_or("[]")),
                    None,
                ));
            }
            _ => {
                let sql = tables.get(source, target, e.relid).await?.1.write.clone();
                statements.push((
                    ApplySql::inline(&sql, e.rows.as_deref().unwrap_or("[]")),
                    None,
                ));
            }
        }
    }
    let apply_err = |what: &str| {
        let what = what.to_string();
        move |source| LogError::Apply { what, source }
    };
    let tx = target
        .transaction()
        .await
        .map_err(apply_err("a transaction"))?;
    let marks: Vec<String> = group.iter().map(|(id, _)| from.mark(*id)).collect();
    let fresh = super::apply::mark_applied(&tx, &marks)
        .await
        .map_err(apply_err("the once-only mark"))?;
    if fresh > 0 {
        for (sql, path) in &statements {
            if let Some(p) = path {
                tx.execute(
                    "SELECT pg_catalog.set_config('search_path', $1, true)",
                    &[p],
                )
                .await
                .map_err(apply_err("the statement's search_path"))?;
            }
            tx.batch_execute(sql).await.map_err(apply_err(sql))?;
        }
    }
    tx.commit().await.map_err(apply_err("the commit"))?;
    Ok(())
}
