//! Scanning old (bulk mode with `--scan-old`): one worker reads a whole table from old in
//! a single binary COPY, a sequential scan in one snapshot that goes through old's small
//! ring of buffers instead of its whole buffer pool. Each row's hash is added to its
//! chunk's sum by key on the way (old's side of the verification pass, as chunk copies
//! record it), and the rows are spread, in whole-row pieces, over several COPYs into new,
//! each in its own transaction.
//!
//! When old's stream has ended and every COPY into new has ended too, the first session
//! records every chunk `copied` with old's sum, guarded by the claims, and commits; then
//! the others commit. So rows are never committed on new before their chunks are
//! recorded, and no row can be loaded twice (the key's rebuild would fail on it):
//! - a stop before the first commit leaves nothing: the chunks are claimed again and the
//!   table is read from the start;
//! - a stop between the commits leaves chunks recorded with some of their rows missing
//!   on new: the verification pass finds them different and the range-by-range check
//!   copies what is missing from old.

use crate::chunk_index::ChunkIndex;
use crate::chunk_table::{record_scanned, Claim};
use crate::plan::TablePlan;
use crate::throttle::{Throttle, BATCH_ROWS};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use std::pin::Pin;
use std::time::Instant;
use switchyard_core::connect::Writer;
use switchyard_core::copy_conn::CopyConn;
use switchyard_core::copy_hash::{int_key, CopyHasher, StreamSum};
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::{Client, CopyInSink};

/// Bytes of whole rows sent to one session of new at a time: the sessions take the
/// pieces in turn.
const PIECE: usize = 64 * 1024;

/// A binary COPY header with no flags and no extension, for each COPY into new (old's
/// own header, which may carry an extension, is not passed on).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Reads `plan`'s table from `old` and loads it into new over `news` (one COPY each),
/// recording every chunk of `claims` (all of the table's) as copied. Returns the rows
/// loaded, or `None` when the claims were taken over meanwhile (everything rolled back).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    old_client: &Client,
    old: &mut CopyConn,
    news: &mut [Writer],
    plan: &TablePlan,
    key_field: usize,
    claims: &[Claim],
    worker: &str,
    throttle: &Throttle,
) -> Result<Option<u64>> {
    let started = Instant::now();
    let index = ChunkIndex::new(claims.iter().map(|c| &c.range))?;
    let columns = plan.column_list();
    // The table form reads the heap without planning; a partitioned table needs a query.
    let partitioned: bool = old_client
        .query_one(
            "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1::text::regclass",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("looking up {} on old", plan.name))?
        .get(0);
    let copy_out = if partitioned {
        format!(
            "COPY (SELECT {columns} FROM {}) TO STDOUT (FORMAT binary)",
            plan.quoted
        )
    } else {
        format!("COPY {} ({columns}) TO STDOUT (FORMAT binary)", plan.quoted)
    };
    let copy_in = format!(
        "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
        plan.quoted
    );

    let mut txs = Vec::with_capacity(news.len());
    for new in news.iter_mut() {
        txs.push(
            new.transaction()
                .await
                .context("starting a loading transaction on new")?,
        );
    }
    let mut sinks: Vec<Pin<Box<CopyInSink<Bytes>>>> = Vec::with_capacity(txs.len());
    for tx in &txs {
        let mut sink = Box::pin(
            tx.copy_in::<_, Bytes>(&copy_in)
                .await
                .with_context(|| format!("starting COPY FROM on new for {}", plan.name))?,
        );
        sink.feed(Bytes::from_static(HEADER))
            .await
            .with_context(|| format!("writing rows of {} to new", plan.name))?;
        sinks.push(sink);
    }

    // The worker's session reads range by range with sequential scans off; the scan
    // needs them, and no statement timeout: it reads the whole table.
    old.execute("BEGIN; SET LOCAL enable_seqscan = on; SET LOCAL statement_timeout = 0")
        .await
        .context("starting the scan on old")?;
    // The sessions take the pieces from one queue as each is ready for more, so a
    // session slowed down on new does not hold up the others.
    let (queue, pieces) = mpsc::channel::<Bytes>(2 * sinks.len());
    let pieces = Mutex::new(pieces);
    let loads = sinks.iter_mut().map(|sink| {
        let pieces = &pieces;
        async move {
            loop {
                let piece = pieces.lock().await.recv().await;
                let Some(piece) = piece else {
                    return anyhow::Ok(());
                };
                sink.feed(piece)
                    .await
                    .with_context(|| format!("writing rows of {} to new", plan.name))?;
            }
        }
    });
    let read = async {
        read_into(
            old,
            &copy_out,
            key_field,
            &index,
            claims.len(),
            queue,
            throttle,
        )
        .await
        .with_context(|| format!("scanning {} on old", plan.name))
    };
    let read =
        tokio::try_join!(read, futures_util::future::try_join_all(loads)).map(|(sums, _)| sums);
    if !old.is_broken() {
        // Read-only: ROLLBACK also ends a transaction a failed COPY aborted.
        old.execute("ROLLBACK")
            .await
            .context("ending the scan on old")?;
    }
    let sums = read?;

    let mut loaded = 0u64;
    for sink in &mut sinks {
        loaded += sink
            .as_mut()
            .finish()
            .await
            .with_context(|| format!("finishing COPY FROM on new for {}", plan.name))?;
    }
    let read_rows: i64 = sums.iter().map(|s| s.rows).sum();
    if loaded != read_rows as u64 {
        bail!(
            "new took {loaded} rows of {} but {read_rows} were read from old",
            plan.name
        );
    }
    let copy_ms = started.elapsed().as_millis() as i64;
    let mut txs = txs.into_iter();
    let Some(first) = txs.next() else {
        bail!("scanning {} needs a session on new", plan.name);
    };
    if !record_scanned(&first, claims, worker, &sums, copy_ms).await? {
        return Ok(None);
    }
    first
        .commit()
        .await
        .with_context(|| format!("committing {} on new", plan.name))?;
    crate::failpoint::exit_at("exit-between-scan-commits");
    // The chunks are recorded copied now: an error from here on must not fail them (a
    // second load would duplicate the committed rows). Rows a session could not commit
    // are missing on new, and the verification copies them from old.
    for tx in txs {
        if let Err(e) = tx.commit().await {
            tracing::warn!(table = %plan.name, error = %e, "A loading session's commit failed after the chunks were recorded; verification will copy its rows.");
        }
    }
    Ok(Some(loaded))
}

/// Streams old's COPY into `queue` in whole-row pieces; returns old's sum per chunk.
async fn read_into(
    old: &mut CopyConn,
    copy_out: &str,
    key_field: usize,
    index: &ChunkIndex,
    chunks: usize,
    queue: mpsc::Sender<Bytes>,
    throttle: &Throttle,
) -> Result<Vec<StreamSum>> {
    let mut source = old.copy_out(copy_out).await.context("starting COPY TO")?;
    let mut hasher = CopyHasher::new(key_field);
    let mut sums = vec![StreamSum::default(); chunks];
    let mut stray = 0u64;
    let mut batch = BytesMut::with_capacity(2 * PIECE);
    let mut header_sent = false;
    let mut sent = 0usize;
    let mut throttled = 0u64;
    loop {
        let start = batch.len();
        if !source.read(&mut batch).await.context("reading rows")? {
            break;
        }
        hasher
            .feed_keyed(&batch[start..], |hash, key| {
                match key.and_then(int_key).and_then(|k| index.slot(k)) {
                    Some(i) => sums[i].add(hash),
                    None => stray += 1,
                }
            })
            .map_err(|e| anyhow::anyhow!("reading old's rows: {}", e.0))?;
        let whole = batch.len() - hasher.pending();
        if whole >= PIECE || hasher.is_done() {
            let mut piece = batch.split_to(whole);
            if !header_sent {
                let Some(n) = hasher.header_len() else {
                    bail!("old's COPY stream has no header");
                };
                let _ = piece.split_to(n);
                header_sent = true;
            }
            if hasher.is_done() {
                piece.truncate(piece.len().saturating_sub(2));
            }
            if !piece.is_empty() {
                queue
                    .send(piece.freeze())
                    .await
                    .map_err(|_| anyhow::anyhow!("the sessions loading new stopped"))?;
                sent += 1;
                if sent == 8 {
                    crate::failpoint::exit_at("exit-mid-scan");
                }
            }
        }
        let rows = hasher.total().rows as u64;
        if rows - throttled >= BATCH_ROWS {
            throttle.take(rows - throttled).await;
            throttled = rows;
        }
    }
    drop(source);
    let total = hasher
        .finish()
        .map_err(|e| anyhow::anyhow!("reading old's rows: {}", e.0))?;
    throttle.take(total.rows as u64 - throttled).await;
    if !batch.is_empty() {
        bail!("{} bytes of old's stream were left over", batch.len());
    }
    if stray > 0 {
        bail!("{stray} rows have a key outside every chunk (or no key)");
    }
    Ok(sums)
}
