//! Moving one chunk's rows: binary `COPY (SELECT ... WHERE <range>) TO STDOUT` on old
//! (read through `core::copy_conn`, in large buffers), streamed into `COPY ... FROM STDIN`
//! on new, so memory stays at a few buffers whatever the chunk size.
//!
//! Two ways in on the new side, both in one transaction:
//! - **direct**: straight into the table. Only when dual writes are declared off and the
//!   chunk's range on new is empty (checked in the same transaction): nothing can conflict.
//! - **merge** (conflict-safe): into a session-local staging table, then
//!   `INSERT INTO t SELECT ... FROM stage ON CONFLICT (pk) DO NOTHING`. A row the proxy
//!   wrote meanwhile is at least as new as our snapshot's, so ours never replaces it.
//!   What this cannot prevent (a row deleted on old after our snapshot, whose mirrored
//!   delete found nothing to delete on new before our insert: a zombie) is found by the
//!   chunk's checksum comparison right after and repaired (see `chunk_check`).

use crate::chunk_table::{record_copied, Claim};
use crate::plan::TablePlan;
use crate::throttle::{Throttle, BATCH_ROWS};
use bytes::BytesMut;
use futures_util::{pin_mut, SinkExt};
use std::collections::HashSet;
use switchyard_core::catalog::IdentityKind;
use switchyard_core::copy_conn::{CopyConn, CopyConnError};
use switchyard_core::copy_hash::{CopyHashError, CopyHasher, StreamSum};
use switchyard_core::ident::quote_ident;
use switchyard_core::key::{KeyRange, KeySql};
use tokio_postgres::Client;

/// A step of the copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{what} for {table}")]
    Db {
        what: &'static str,
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} for {table}")]
    Copy {
        what: &'static str,
        table: String,
        #[source]
        source: CopyConnError,
    },
    #[error("hashing the rows of {table} read from old")]
    Stream {
        table: String,
        #[source]
        source: CopyHashError,
    },
}

/// How a chunk went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Merge,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Merge => "merge",
        }
    }
}

/// What a chunk copy did.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub path: Path,
    /// Rows read from old.
    pub rows_copied: u64,
    /// Rows that went into the table on new (fewer than copied when the proxy had
    /// written some of them already).
    pub rows_inserted: u64,
    /// The direct path with `hash_direct`: old's checksum of the rows as the copy read
    /// them.
    pub old_sum: Option<StreamSum>,
}

/// The statements for one table, built once.
#[derive(Debug, Clone)]
pub struct CopySql {
    pub(crate) table: String,
    display: String,
    key: KeySql,
    columns: String,
    stage: String,
    create_stage: String,
    merge: String,
}

impl CopySql {
    /// Statements for `plan`; `stage_no` names its staging table (unique per table in a
    /// session).
    pub fn new(plan: &TablePlan, stage_no: usize) -> Self {
        let columns = plan.column_list();
        let stage = quote_ident(&format!("switchyard_backfill_stage_{stage_no}"));
        let overriding = if plan
            .new
            .writable_columns()
            .any(|c| c.identity == Some(IdentityKind::Always))
        {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let key = KeySql::new(&plan.old);
        CopySql {
            create_stage: format!(
                "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS \
                 SELECT {columns} FROM {} WITH NO DATA",
                plan.quoted
            ),
            merge: format!(
                "INSERT INTO {} ({columns}){overriding} SELECT {columns} FROM {stage} \
                 ON CONFLICT ({}) DO NOTHING",
                plan.quoted,
                key.names(None)
            ),
            table: plan.quoted.clone(),
            display: plan.name.to_string(),
            key,
            columns,
            stage,
        }
    }

    fn err(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CopyError {
        let table = self.display.clone();
        move |source| CopyError::Db {
            what,
            table,
            source,
        }
    }

    fn copy_err(&self, what: &'static str) -> impl FnOnce(CopyConnError) -> CopyError {
        let table = self.display.clone();
        move |source| CopyError::Copy {
            what,
            table,
            source,
        }
    }

    fn stream_err(&self, source: CopyHashError) -> CopyError {
        CopyError::Stream {
            table: self.display.clone(),
            source,
        }
    }

    fn copy_out(&self, range: &KeyRange) -> String {
        format!(
            "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
            self.columns,
            self.table,
            self.key.range_predicate_literal(range)
        )
    }
}

/// Bytes of rows sent to new per COPY message.
const SINK_BATCH: usize = 64 * 1024;

/// Staging tables already created on a session (they live as long as it does).
#[derive(Debug, Default)]
pub struct Stages(HashSet<String>);

impl Stages {
    /// After a failed chunk: the transaction that created a staging table may have rolled
    /// back, so create them again (`IF NOT EXISTS`) before the next use.
    pub fn forget(&mut self) {
        self.0.clear();
    }
}

/// Streams `range` of the table on old into `target` on new, inside `tx`; returns the
/// rows written and old's checksum of the rows as the copy read them.
async fn stream_rows(
    old: &mut CopyConn,
    tx: &tokio_postgres::Transaction<'_>,
    sql: &CopySql,
    target: &str,
    range: &KeyRange,
    throttle: &Throttle,
) -> Result<(u64, StreamSum), CopyError> {
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {target} ({}) FROM STDIN (FORMAT binary)",
            sql.columns
        ))
        .await
        .map_err(sql.err("starting COPY FROM on new"))?;
    pin_mut!(sink);
    let mut source = old
        .copy_out(&sql.copy_out(range))
        .await
        .map_err(sql.copy_err("starting COPY TO on old"))?;
    // Rows are parsed (and hashed) on the way for the throttle's row count, whether or
    // not the sum is used: a field walk and one XXH3 per row.
    let mut hasher = CopyHasher::default();
    let mut batch = BytesMut::with_capacity(2 * SINK_BATCH);
    let mut throttled = 0u64;
    loop {
        let start = batch.len();
        // `sql.*_err` build their closures eagerly: only on the error path.
        match source.read(&mut batch).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(sql.copy_err("reading rows from old")(e)),
        }
        hasher
            .feed(&batch[start..])
            .map_err(|e| sql.stream_err(e))?;
        if batch.len() >= SINK_BATCH {
            if let Err(e) = sink.feed(batch.split().freeze()).await {
                return Err(sql.err("writing rows to new")(e));
            }
        }
        let rows = hasher.total().rows as u64;
        if rows - throttled >= BATCH_ROWS {
            throttle.take(rows - throttled).await;
            throttled = rows;
        }
    }
    drop(source);
    let old_sum = hasher.finish().map_err(|e| sql.stream_err(e))?;
    throttle.take(old_sum.rows as u64 - throttled).await;
    if !batch.is_empty() {
        if let Err(e) = sink.feed(batch.split().freeze()).await {
            return Err(sql.err("writing rows to new")(e));
        }
    }
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(sql.err("finishing COPY FROM on new"))?;
    Ok((rows, old_sum))
}

/// Bulk mode: COPYs `range` straight into the table (its primary key is dropped, so no
/// range check: the table holds exactly the rows of chunks recorded copied) and records
/// the chunk as copied in the same transaction, with old's checksum of the rows as read
/// when `stream_hash` (see `table_pass`). `None` when the chunk was taken over by another
/// worker meanwhile (rolled back: nothing written).
#[allow(clippy::too_many_arguments)]
pub async fn copy_chunk_bulk(
    old: &mut CopyConn,
    new: &mut Client,
    sql: &CopySql,
    range: &KeyRange,
    throttle: &Throttle,
    claim: &Claim,
    worker: &str,
    stream_hash: bool,
) -> Result<Option<u64>, anyhow::Error> {
    let started = std::time::Instant::now();
    let tx = new
        .transaction()
        .await
        .map_err(sql.err("starting a transaction on new"))?;
    let (rows, sum) = stream_rows(old, &tx, sql, &sql.table, range, throttle).await?;
    let copy_ms = started.elapsed().as_millis() as i64;
    let old_sum = stream_hash.then_some(sum);
    if !record_copied(&tx, claim, worker, rows as i64, copy_ms, old_sum).await? {
        tx.rollback()
            .await
            .map_err(sql.err("rolling back a chunk taken over"))?;
        return Ok(None);
    }
    tx.commit()
        .await
        .map_err(sql.err("committing the chunk on new"))?;
    Ok(Some(rows))
}

/// Copies `range` of a table from `old` into `new`. `direct_allowed` says dual writes are
/// off (the direct path is then taken when the range on new is empty); with
/// `hash_direct`, a direct copy also hashes the rows it relays.
#[allow(clippy::too_many_arguments)]
pub async fn copy_chunk(
    old: &mut CopyConn,
    new: &mut Client,
    stages: &mut Stages,
    sql: &CopySql,
    range: &KeyRange,
    direct_allowed: bool,
    hash_direct: bool,
    throttle: &Throttle,
) -> Result<Copied, CopyError> {
    if !direct_allowed && !stages.0.contains(&sql.stage) {
        new.batch_execute(&sql.create_stage)
            .await
            .map_err(sql.err("creating the staging table"))?;
        stages.0.insert(sql.stage.clone());
    }
    let tx = new
        .transaction()
        .await
        .map_err(sql.err("starting a transaction on new"))?;
    let mut path = Path::Merge;
    if direct_allowed {
        let mut params = Vec::new();
        let pred = sql.key.range_predicate(range, 1, &mut params);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let row = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {} WHERE {pred})", sql.table),
                &refs,
            )
            .await
            .map_err(sql.err("checking whether the range is empty on new"))?;
        if !row.get::<_, bool>(0) {
            path = Path::Direct;
        } else if !stages.0.contains(&sql.stage) {
            tx.batch_execute(&sql.create_stage)
                .await
                .map_err(sql.err("creating the staging table"))?;
            stages.0.insert(sql.stage.clone());
        }
    }
    let target = match path {
        Path::Direct => &sql.table,
        Path::Merge => &sql.stage,
    };
    let (rows_copied, sum) = stream_rows(old, &tx, sql, target, range, throttle).await?;
    let old_sum = (path == Path::Direct && hash_direct).then_some(sum);
    let rows_inserted = match path {
        Path::Direct => rows_copied,
        Path::Merge => tx
            .execute(&sql.merge, &[])
            .await
            .map_err(sql.err("merging the staged rows into the table on new"))?,
    };
    tx.commit()
        .await
        .map_err(sql.err("committing the chunk on new"))?;
    Ok(Copied {
        path,
        rows_copied,
        rows_inserted,
        old_sum,
    })
}

/// Reads `range` back from `conn` as binary COPY and hashes it the way `stream_rows`
/// hashes what it relays.
pub async fn range_sum(
    conn: &mut CopyConn,
    sql: &CopySql,
    range: &KeyRange,
) -> Result<StreamSum, CopyError> {
    let what = "reading the chunk back from new";
    let mut hasher = CopyHasher::default();
    read_hashed(conn, &sql.copy_out(range), &mut hasher, |_, _| {})
        .await
        .map_err(sql.copy_err(what))?
        .map_err(|e| sql.stream_err(e))?;
    hasher.finish().map_err(|e| sql.stream_err(e))
}

/// Runs a `COPY ... TO STDOUT (FORMAT binary)` on `conn` and feeds all of it to `hasher`
/// (`on_row` as in `CopyHasher::feed_keyed`). A hashing error leaves the COPY read to its
/// end, so the session stays usable.
pub async fn read_hashed(
    conn: &mut CopyConn,
    copy_sql: &str,
    hasher: &mut CopyHasher,
    mut on_row: impl FnMut(u64, Option<&[u8]>),
) -> Result<Result<(), CopyHashError>, CopyConnError> {
    let mut source = conn.copy_out(copy_sql).await?;
    let mut buf = BytesMut::with_capacity(2 * SINK_BATCH);
    let mut hashed = Ok(());
    while source.read(&mut buf).await? {
        if hashed.is_ok() {
            hashed = hasher.feed_keyed(&buf, &mut on_row);
        }
        buf.clear();
    }
    Ok(hashed)
}
